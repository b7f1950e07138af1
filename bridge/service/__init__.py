"""The server as a service: process control, launchd/systemd units, doctor, logs."""
