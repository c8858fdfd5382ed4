"""ow-es."""
