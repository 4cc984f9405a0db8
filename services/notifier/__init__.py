"""Notifier: fans match results out to subscribers as signed Standard Webhooks."""
