"""Operator control: signed commands, the CLI's connection to the running system, verify."""
