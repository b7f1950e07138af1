"""What a model directory says about itself, read without loading weights."""
