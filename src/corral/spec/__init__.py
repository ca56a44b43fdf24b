"""Load, compose, override and validate campaign files; expand items."""

from corral.spec.items import Item, ItemSource, canonical_json, item_identity
from corral.spec.loader import LoadedCampaign, load_campaign

__all__ = ["Item", "ItemSource", "LoadedCampaign", "canonical_json", "item_identity", "load_campaign"]
