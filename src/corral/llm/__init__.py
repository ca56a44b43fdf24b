"""What the LLM batch backends share: request templates, token estimates, packing, prices and the
scheduler that keeps a provider's limits full without passing them."""

from corral.llm.requests import RequestTemplate, file_text, image_data_url, text_of

__all__ = ["RequestTemplate", "file_text", "image_data_url", "text_of"]
