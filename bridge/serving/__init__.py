"""Local generation on MLX: names -> jobs -> native responses, and what output holds."""
