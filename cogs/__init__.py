"""Discord features, one cog per file. Cogs hold Discord glue only; the work lives in `bot/`."""
