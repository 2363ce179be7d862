"""Shared pytest setup for every tier; fixtures for real processes live in tests/integration."""
