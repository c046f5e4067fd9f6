"""Who is calling: user tokens, and the Authenticator classes that handle POST /tokens/."""
