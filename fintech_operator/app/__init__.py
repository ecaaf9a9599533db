"""The application layer: one use case per module, between the entry points and the domain.

A use case takes a typed command and returns a typed outcome (for example ``Issued``,
``Rejected(reason)``, ``HeldForReview``, ``Retry(delay_seconds)``). It calls the pure rules
and the adapters (stores, the ledger engine, the tokenizer) and knows nothing of kopf or
HTTP, so the kopf handlers and the gateway are thin: decode the request, call the use case,
render the outcome (a status patch, an HTTP answer). See docs/architecture.md.
"""
