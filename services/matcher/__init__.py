"""Matcher: searches the enrolled gallery (Qdrant) or enrols into it."""
