"""The Python face of corral: ``corral.open("corral.yaml")`` gives a Campaign; runs, status, results."""

from corral.api.campaign import Campaign, Run

__all__ = ["Campaign", "Run"]
