from ftctl.cli.main import entry

entry()
