"""The operator commands behind `engine ...`, one module per group (cli.py only parses)."""
