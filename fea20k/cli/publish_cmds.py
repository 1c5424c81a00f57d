"""Commands of this area register themselves on the app here."""
