"""The HStreamDB side: an asyncio client, record encoding, errors and the embedded store."""
