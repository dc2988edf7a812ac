"""matplotlib for the benchmarks' PNGs: off-screen, and optional (a benchmark without it prints its table only)."""


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a line saying so) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display on a server
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return None
    return plt
