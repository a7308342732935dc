"""Helpers shared by the cogs: building and reading result messages, delivery, attachments, buttons."""
