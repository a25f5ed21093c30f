"""pyro_compute: Monte Carlo and other embarrassingly parallel work spread over Pyro4 workers."""
__version__ = "0.1.0"
