-- Key rotation: a new key names the key it replaces; the old key is retired when the new one is first used.
ALTER TABLE keys ADD COLUMN replaces TEXT;
