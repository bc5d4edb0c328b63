"""Helpers shared by several test folders (imported as modules; fixtures stay in conftest files)."""
