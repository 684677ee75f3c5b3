"""The self-service page (``portal``): users enrol and manage their own factors.

- :mod:`radius_mfa.portal.html`: the pages, plain server-rendered HTML with
  one small inline stylesheet and nothing fetched from anywhere else;
- :mod:`radius_mfa.portal.app`: the Twisted web resource (sign-in, sessions,
  CSRF, the actions) and how it is served over HTTPS.
"""
