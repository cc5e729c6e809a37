package org.mcpm.demo;

import java.text.DecimalFormatSymbols;
import java.util.Locale;
import java.util.regex.Pattern;

/**
 * Decimal settings typed in any locale: "0,7" (German, French, ...) and "0.7" both mean 0.7, shown with the
 * locale's separator. Float.parseFloat alone would refuse the comma and accept "NaN", "Infinity", "1f" or hex.
 * Pure Java: tested on the host JVM.
 */
final class DecimalInput {
    /** Digits with at most one separator, '.' or ',' (no grouping, exponent, sign of infinity or NaN). */
    private static final Pattern DECIMAL = Pattern.compile("[+-]?(\\d+([.,]\\d*)?|[.,]\\d+)");

    private DecimalInput() {
    }

    /** The number typed, or null when text is not a plain decimal number. */
    static Float parse(String text) {
        String t = text == null ? "" : text.trim();
        if (!DECIMAL.matcher(t).matches()) {
            return null;
        }
        return Float.parseFloat(t.replace(',', '.'));
    }

    /** value as the field shows it: the shortest float text, with the locale's decimal separator. */
    static String format(float value, Locale locale) {
        char sep = DecimalFormatSymbols.getInstance(locale).getDecimalSeparator();
        return String.valueOf(value).replace('.', sep);
    }
}
