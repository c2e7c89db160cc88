from ftctl.cli import entry

entry()
