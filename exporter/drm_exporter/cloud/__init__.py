"""Cloud cost sources: billed spend (AWS Cost Explorer, Azure Cost Management) and price
catalogs (GCP Cloud Billing Catalog), refreshed in the background on a leash."""
