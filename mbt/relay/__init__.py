"""The mbt relay: pairs two outbound connections by a token and pipes bytes between them."""
