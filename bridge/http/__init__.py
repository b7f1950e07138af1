"""HTTP plumbing: the gunicorn server and worker, Host/CORS guards, size limits, responses."""
