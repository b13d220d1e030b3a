HTTP/1.1 405 Method Not Allowed
Server: nerve/0.1.0
Content-Type: application/problem+json
Allow: GET
Content-Length: 163

