"""``proxy-compose serve``: a composition over the OpenAI HTTP API, requests batched into shared forwards.

``settings`` imports nothing of the web stack (the run config's schema reads it); ``app`` needs the serve extra.
"""
