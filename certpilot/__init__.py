"""certpilot: observability-first TLS certificate monitoring and remediation."""

__version__ = "0.1.0"
