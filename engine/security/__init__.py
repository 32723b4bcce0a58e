"""Security controls: TLS contexts and client-certificate allow-lists (`tls`), development
certificates (`devcerts`). Each module owns one control; README "Security" maps them."""
