from bridge.cli.main import cli

cli()
