"""Flask blueprints, one per resource: parse the request, call serving/routing, shape."""
