"""Card issuance: tokenization (no card number ever leaves this package's memory)."""
