"""The `mlx-bridge` command line, one module per command family."""
