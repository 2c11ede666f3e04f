"""The LiFT loop's stages as package functions (the tools and the loop runner call these):
`score` (videos -> critic answers -> rewards)."""
