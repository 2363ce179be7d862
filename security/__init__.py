"""The city's security: its PKI, and (to come) tokens, identities, the authorization
policy and the audit chain. Used by the components; imports none of them."""
