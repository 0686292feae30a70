"""Subcommands of the ``gs2pose`` program that belong to no single stage."""
