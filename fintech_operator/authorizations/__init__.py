"""Real-time card authorizations: holds, captures, voids and expiry (issue 13)."""
