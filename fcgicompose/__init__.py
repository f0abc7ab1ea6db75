"""fcgicompose: declarative FastCGI apps behind nginx on systemd."""

__version__ = "0.1.0"
