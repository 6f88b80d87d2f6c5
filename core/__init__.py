"""Groundwork core: corpus, providers, generation, review and export, with no UI inside."""
