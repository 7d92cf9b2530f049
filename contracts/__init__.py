"""contracts/ is data (see README.md here); this file lets a wheel ship it as the package harness.contracts_data."""
