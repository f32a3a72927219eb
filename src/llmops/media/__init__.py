"""Media that clients send (encoded images), decoded only within limits."""
