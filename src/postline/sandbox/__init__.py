"""The sandbox simulator MX for ``*@simulator.postline.test``."""
