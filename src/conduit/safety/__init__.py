"""Guards: prompt injection, PII, output checks."""
