# embed_rules.cmake - cmake -DIN=config/bounce-rules.conf -DOUT=x.c -P embed_rules.cmake
# Writes the shipped bounce rules as a C byte array (NUL-terminated), the
# built-in default that delivery/rules.c parses when delivery.bounce_rules
# is "". Run by the build whenever the .conf changes.
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n"
       bytes "${bytes}")
file(WRITE "${OUT}.tmp"
     "/* generated from config/bounce-rules.conf by delivery/embed_rules.cmake */\n"
     "extern const char dlv_rules_builtin_text[];\n"
     "const char dlv_rules_builtin_text[] = {\n${bytes}0x00};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
