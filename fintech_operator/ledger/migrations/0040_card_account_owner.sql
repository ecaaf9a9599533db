-- Card accounts by card name: a Card re-created with a deleted card's name must not inherit
-- that card's account (its balance, history and rewards). The operator records the name and
-- the card's uid in accounts.metadata ('card', 'uid') when it opens the account; issuance
-- looks up every account ever opened under the name, in any currency, before it issues.
-- Partial: system accounts carry no card.
CREATE INDEX accounts_card_name_idx ON accounts ((metadata ->> 'card')) WHERE kind = 'card';
