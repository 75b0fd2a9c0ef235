"""Who may do what: roles per project and the principals calls act as (``roles``), and API tokens
(``tokens``: minted at random, stored only as hashes, expiring, revocable)."""
