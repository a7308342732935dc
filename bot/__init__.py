"""lcm-bot: a Discord bot that turns slash commands into images with LCM SSD-1B."""
