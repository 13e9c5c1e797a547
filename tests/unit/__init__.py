"""Fast tests of the parts of the remote providers, each on its own: no servers, models or data."""
