"""Sending one-time codes: SMS, voice calls and mail through providers with failover."""
