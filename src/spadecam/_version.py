"""The package version (pyproject.toml's), importable by any module without importing the
package's public API."""

__version__ = "0.2.0"
