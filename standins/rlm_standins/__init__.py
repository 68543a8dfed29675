"""Wire-level stand-ins of the cloud sandbox providers, for tests through the real SDKs."""
